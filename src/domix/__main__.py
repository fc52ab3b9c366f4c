from domix.cli import main

raise SystemExit(main())
