"""What a user runs: the ``freshrank`` command line (`freshrank.apps.cli`) and the demo
(`freshrank.apps.demo`). Nothing below imports from here."""
