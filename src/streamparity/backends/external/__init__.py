"""Out-of-process runtimes: any program that speaks the frame protocol (``protocol.py``) over stdin/stdout
is judged with the same suite (``--runtime=NAME:PRECISION=COMMAND``), and recordings of such runs
(``--recorded=NAME:PRECISION=PATH``)."""
