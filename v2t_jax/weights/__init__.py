"""Other formats' weights in and out of this project's networks.

hf_t5            a Hugging Face T5 folder as this project's T5 parameters
bert_to_t5       a BERT embedder's layers as a T5's (BERT2BERT)
vec2text_import  vec2text's inverter and corrector checkpoints as a model bundle
vec2text_export  a model bundle as vec2text checkpoints
"""
