"""onerec: an open implementation of Kuaishou's OneRec generative recommender.

The package follows the pipeline (see ``docs/`` and the README):
``data`` -> ``content`` -> ``tokenizer`` -> ``features`` -> ``model`` -> ``train``
-> ``generate`` -> ``eval``, with ``baselines`` evaluated in the same harness.
"""

__version__ = "0.1.0"
