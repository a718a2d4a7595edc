"""streamparity: parity and regression suite for stateful streaming speech encoders.

Architecture (one module per job)::

    contract  ->  reference  ->  backends  ->  drivers  ->  compare  ->  report
                  (+ reference_checks, invariants)          (+ stability)
"""

__version__ = "0.1.0"
