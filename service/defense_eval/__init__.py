"""Defense evaluation: ZIP and the baseline defenses against the attack zoo of `service.backdoor`."""
