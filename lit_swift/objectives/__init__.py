"""One LightningModule per training objective."""
