"""One LightningModule per method (full, gates, lengthdrop), the evolutionary length search, building a
model and a method from config, checkpoints, callbacks and loggers."""
