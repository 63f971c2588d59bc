"""edifice Gradio app (placeholder until the app issue lands): `python app.py` serves on 127.0.0.1:7860."""

import gradio as gr

with gr.Blocks(title="edifice") as demo:
    gr.Markdown("# edifice\nWatch MAR and VAR image generators think. The streaming app is under construction; "
                "the library (`edifice`) already samples VAR scale by scale.")

if __name__ == "__main__":
    demo.launch()
