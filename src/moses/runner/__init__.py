"""Training and evaluation shared by every method."""
