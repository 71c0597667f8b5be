"""Pure pieces for probing a frozen Whisper encoder (SUPERB-style) and testing it "in the wild".

No Lightning or Hydra here: ``convert_ct2`` (package-shipped CTranslate2 Whisper -> HF folder),
``upstream`` (frozen encoder -> all hidden states), ``featurizer`` / ``heads`` (s3prl-style probes),
``corruption`` (noise / reverberation conditions), ``cache`` (one encoder pass per utterance and condition).
"""
