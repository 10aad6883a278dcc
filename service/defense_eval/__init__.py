"""Defense evaluation: the backdoor triggers (BadNets, Blended, WaNet) and their metrics."""
