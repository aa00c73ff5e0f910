"""thyme-vl: vision-language models that think beyond images.

The model writes Python inside its reasoning; `thyme.sandbox` runs it out of process; `thyme.protocol`
defines the prompts, the tag grammar, the parser and the answer extraction that every consumer shares.
"""

__version__ = "0.1.0.dev0"
