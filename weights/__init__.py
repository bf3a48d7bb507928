"""Shipped pretrained lipden denoisers (data only): ``<activation>-sigma<N>.safetensors`` + ``.json`` cards."""
