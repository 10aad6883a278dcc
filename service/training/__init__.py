"""Training of the shipped default models (Fashion-MNIST DDPM and vendor classifiers)."""
