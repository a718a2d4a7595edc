"""python -m streamparity.cli"""

from streamparity.cli.main import main

raise SystemExit(main())
