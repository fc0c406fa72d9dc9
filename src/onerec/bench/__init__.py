"""Paper-comparable benchmarks behind ``onerec bench`` (Amazon 2014 under the TIGER protocol, and the
Amazon 2018 Scientific comparison against published semantic-ID indexes)."""
