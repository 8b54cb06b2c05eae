"""Screen frames: sources, 1 FPS sampling by timestamps, change detection, the screen state."""
