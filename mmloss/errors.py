"""The exceptions mmloss raises for invalid input.

mmloss's messages name the loss, the argument and what it got; MMDetection
3.3 reports the same mistakes with an ``assert`` (``AssertionError``), or
lets torch fail on them (``RuntimeError`` from mismatched shapes,
``IndexError`` from an index past the end, ``NotImplementedError`` for a
combination it does not support). Code written for MMDetection catches
those types (its own unit tests expect ``AssertionError`` for
``reduction_override='max'``), so each mmloss error is an instance of its
clear kind *and* of every type MMDetection raises in the same situation:

* :class:`LossValueError` -- an invalid value or shape (``ValueError``,
  ``AssertionError``, ``RuntimeError``, ``IndexError``);
* :class:`LossTypeError` -- a tensor of the wrong dtype or an argument of
  the wrong type (``TypeError``, ``AssertionError``, ``RuntimeError`` and
  its subclass ``NotImplementedError``);
* :class:`LossZeroDivisionError` -- a :class:`LossValueError` for a
  parameter MMDetection divides by (``ZeroDivisionError`` there), e.g.
  Balanced L1's ``alpha = 0``;
* :class:`LossNotImplementedError` -- a combination of arguments mmdet
  refuses with ``NotImplementedError`` (``NotImplementedError``,
  ``AssertionError``, and ``ValueError`` like every other refused
  argument value).

They add no state: ``str(error)`` is the message, and ``except
ValueError`` (mmloss's documented type) keeps working.
"""

__all__ = ['LossValueError', 'LossTypeError', 'LossNotImplementedError',
           'LossZeroDivisionError']


class LossValueError(ValueError, AssertionError, RuntimeError, IndexError):
    """An invalid value or shape given to a loss (see the module
    docstring for why it is also each type MMDetection raises)."""


class LossTypeError(TypeError, NotImplementedError, AssertionError):
    """A tensor of the wrong dtype, or an argument of the wrong type (torch
    says ``NotImplementedError``, a ``RuntimeError``, for an op without an
    integer kernel)."""


class LossNotImplementedError(NotImplementedError, ValueError,
                              AssertionError):
    """A combination of arguments the loss does not define (mmdet raises
    ``NotImplementedError``; ``ValueError`` is mmloss's type for any
    refused argument value)."""


class LossZeroDivisionError(LossValueError, ZeroDivisionError):
    """A zero given for a parameter that the loss divides by (MMDetection
    lets Python raise ``ZeroDivisionError`` there)."""
