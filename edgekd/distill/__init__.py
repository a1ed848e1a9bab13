"""Knowledge distillation: losses, schedules (the algorithms; passes/ only adapts them)."""
