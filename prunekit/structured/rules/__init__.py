"""Channel rules: how each op (``ops*``) and each module (``leaves*``, ``mha``) moves, couples
or freezes channels, and ``padding`` (channels inserted by ``F.pad``). A new op rule goes here."""
