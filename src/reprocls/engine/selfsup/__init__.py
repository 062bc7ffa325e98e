"""Self-supervised pretraining: the objectives, the methods that wrap a backbone, and the k-NN monitor."""
