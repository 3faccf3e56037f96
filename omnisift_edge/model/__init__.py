"""Model stage: load a Qwen2.5-Omni thinker (local folder, OmniSIFT checkpoint, or the embedded
tiny default), build the audio-video layout, and turn raw media into model inputs."""
