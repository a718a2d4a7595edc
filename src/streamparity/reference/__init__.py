"""The reference: tensor codec, reader with its byte-offset index, fast line parser, writer, sanity checks."""
