from fnsession.cli import main

raise SystemExit(main())
