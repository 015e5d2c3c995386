"""Siamese training over cached CNN feature maps."""
