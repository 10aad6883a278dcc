"""The backdoor benchmark that training and evaluation share: Fashion-MNIST, the trigger zoo, the vendor
classifier and its files, and the metrics (CA, ASR, PA). It imports neither `training` nor `defense_eval`."""
