from dfmlbench.cli import main

raise SystemExit(main())
