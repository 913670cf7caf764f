from relaycore.cli import main

raise SystemExit(main())
