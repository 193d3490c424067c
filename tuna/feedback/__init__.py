"""Feedback for ranking: sample candidate sets (``generators``), rank them by a teacher's log-likelihood
(``scoring``) or by an LLM judge (``judge`` + ``client``), with a local llama.cpp server (``server``)."""
