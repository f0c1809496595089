from bus.cli.app import main

raise SystemExit(main())
