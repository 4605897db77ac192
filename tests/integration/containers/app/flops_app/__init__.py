"""Fixture Flower app for the image builder tests."""
