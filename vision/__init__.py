"""Screen frames: decoding sources, 1 FPS sampling by timestamps, the latest-kept screen state."""
