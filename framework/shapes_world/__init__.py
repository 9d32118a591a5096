"""The shapes world: ground truth, training data and evaluator of the embedded prior."""
