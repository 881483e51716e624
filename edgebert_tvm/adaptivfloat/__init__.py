"""AdaptivFloat numbers: the reference quantizer and the TVM custom-datatype registration."""
