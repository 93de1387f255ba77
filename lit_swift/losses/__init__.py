"""Pure tensor losses returning `(loss, metrics)`."""
