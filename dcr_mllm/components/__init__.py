"""Parts the tiny models are built from, shared by the tiny preset and the world: tokenizers,
diffusion components in Stable Diffusion's layout, and ``build_once`` (a locked, atomic build)."""
