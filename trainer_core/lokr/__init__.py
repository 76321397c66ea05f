"""LyCORIS LoKr files: key names (kohya/SGM and diffusers), our own delta math, reading and validation.

One implementation serves the merge (bake into a checkpoint), the Generate tab (apply at run time and restore)
and the trainer (save names), so a LoKr means the same thing everywhere.
"""
