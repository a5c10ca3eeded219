"""dfmlbench: a benchmark harness for data-free meta-learning (DFML).

A meta-learner is learned from a pool of pre-trained classifiers, without their training
data, and tested on the same fixed few-shot episodes for every method.
"""

__version__ = "0.1.0"
