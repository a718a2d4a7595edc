"""Root conftest.

The streamparity plugin is registered through the ``pytest11`` entry point of the installed
package (``pip install -e .``), so that its options (``--reference PATH`` ...) are known before
pytest picks its rootdir from the command line.  Fixtures shared by the product's own tests are
in ``tests/conftest.py``.
"""
