"""Lightning callbacks (installed as `lit_swift.callbacks`)."""
