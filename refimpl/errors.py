"""Exceptions for datasets that are not realizable or not readable (docs/datasets.md).

Every error raised for bad data is a subclass of :class:`DatasetError`. Each
carries the place it found the problem:

``sentence``  index of the offending sentence (0-based) or ``None``
``tokens``    the tokens involved (tuple of ints) or ``None``
``query``     the query token involved or ``None``
``witness``   a dict with everything above plus case-specific evidence
              (for a cycle: ``witness["cycle"]``, the tokens of the cycle in
              order, first token repeated at the end)

The message is one line, so the command line can print it as it is.
"""
from __future__ import annotations

__all__ = [
    "DatasetError",
    "TokenOutOfRangeError",
    "EmptySentenceError",
    "EmptyDatasetError",
    "VocabularySizeError",
    "CountMismatchError",
    "CollocationConflictError",
    "NoOptimalTokenError",
    "AmbiguousOptimalTokenError",
    "OrderCycleError",
    "OrderContradictionError",
    "OptimalTokenMismatchError",
    "NonOrthonormalEmbeddingError",
    "FileFormatError",
    "ConfigError",
    "ResourceError",
    "InputError",
    "ShapeError",
    "NonFiniteError",
    "SentenceInputError",
]


class DatasetError(ValueError):
    """Base class: the data is not a realizable dataset (or not a dataset at all)."""

    def __init__(self, message, *, sentence=None, tokens=None, query=None, **extra):
        super().__init__(" ".join(str(message).split()))  # always one line
        self.sentence = None if sentence is None else int(sentence)
        self.tokens = None if tokens is None else tuple(int(t) for t in tokens)
        self.query = None if query is None else int(query)
        self.witness = {"sentence": self.sentence, "tokens": self.tokens, "query": self.query}
        self.witness.update(extra)


class TokenOutOfRangeError(DatasetError):
    """A token (in a sentence, a next token, the collocation or an order) is not in 0..M-1."""


class EmptySentenceError(DatasetError):
    """A sentence has length 0; the query (last token) is undefined."""


class EmptyDatasetError(DatasetError):
    """The dataset has no sentences: the loss, its gradient and every claim are undefined."""


class VocabularySizeError(DatasetError):
    """``vocab_size`` is below 2: a next-token problem needs at least two tokens."""


class CountMismatchError(DatasetError):
    """The numbers of sentences, lengths and next tokens differ."""


class CollocationConflictError(DatasetError):
    """One token is given two different next tokens in the collocation."""


class NoOptimalTokenError(DatasetError):
    """No distinct token x of the sentence has n(x) equal to the next token."""


class AmbiguousOptimalTokenError(DatasetError):
    """Two or more distinct tokens of the sentence have n(x) equal to the next token."""


class OrderCycleError(DatasetError):
    """The (supplied or induced) relations of one query contain a cycle; ``witness['cycle']``."""


class OrderContradictionError(DatasetError):
    """Supplied orders do not place every other token of a sentence below its optimal token."""


class OptimalTokenMismatchError(DatasetError):
    """A file's optional ``optimal`` field disagrees with the optimal tokens validation finds;
    ``witness['stored']`` and ``witness['computed']`` hold the two tokens of the first
    differing sentence."""


class NonOrthonormalEmbeddingError(DatasetError):
    """Theory code needs E^T E = I; ``witness['max_deviation']`` is max |E^T E - I|."""


class FileFormatError(DatasetError):
    """The file is not JSON, not an object, has an unknown ``format`` tag or bad fields."""


class ConfigError(ValueError):
    """A training or generation parameter is out of its domain (step size, step count, sizes)."""


class ResourceError(ConfigError):
    """A computation would need more memory than this machine allows.

    Raised before the allocation, with the sizes and the estimate in the message;
    ``needed_bytes`` and ``limit_bytes`` hold the two numbers."""

    def __init__(self, message, *, needed_bytes=None, limit_bytes=None):
        super().__init__(" ".join(str(message).split()))
        self.needed_bytes = needed_bytes
        self.limit_bytes = limit_bytes


class InputError(ValueError):
    """An argument of a public function (weights, sentences, lengths) is malformed.

    Raised at the public boundary, before any compiled loop runs, so a bad argument
    never reaches code that runs without bounds checks."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))  # always one line


class ShapeError(InputError):
    """An array has the wrong number of dimensions or the wrong shape."""


class NonFiniteError(InputError):
    """An input array holds NaN or +-inf where finite numbers are required."""


class SentenceInputError(InputError):
    """Sentences given to a public function are malformed: a token outside 0..M-1, a
    length outside 1..width, or a flat list of ints where a list of sentences is expected."""
