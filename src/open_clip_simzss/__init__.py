"""open_clip_simzss: SimZSS (ICLR 2025) on top of OpenCLIP and timm."""
