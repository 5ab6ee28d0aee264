"""Deployment: OpenVINO inference on exported models."""
