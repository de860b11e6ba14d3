"""bert_sst2_data: the reproduction guide's BERT-SST2 Step 2 as a pair. Each side reads the same small
SST-2 TSV files and vocabulary (data/, in the repository: nothing is downloaded) with its own
library's BertTokenizer, then batches them as its own code would: Hugging Face's
DataCollatorWithPadding on a torch DataLoader, PaddleNLP's Dict/Pad/Stack batchify on a paddle
DataLoader. The data check compares the two pipelines; every other check runs on torch's batches
([data] source defaults to "torch": the pair has no make_batch), the metric over the whole dev
split. The models are examples/bert_sst2's small BERTs with this vocabulary.

TORCH and PADDLE hold each side's pipeline settings: change one of PADDLE's to see the data
check name the difference (padding to max_len, a shorter max_len, lower-casing off, drop_last
on the eval loader, labels read off by one).
"""

import csv
from pathlib import Path

import paddle
import torch

DATA = Path(__file__).resolve().parent / "data"
VOCAB = DATA / "vocab.txt"
FILES = {"train": DATA / "train.tsv", "eval": DATA / "dev.tsv"}
BATCH = {"train": 8, "eval": 4}
TORCH = dict(max_len=64, lower_case=True, pad_to_max=False, drop_last_eval=False, label_offset=0)
PADDLE = dict(TORCH)
CONFIG = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
              max_position_embeddings=64, type_vocab_size=2,  # PaddleNLP's default is 16, HF's 2
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, num_labels=2)


def rows(split: str) -> list:
    with open(FILES[split], newline="", encoding="utf-8") as f:
        return [(r["sentence"], int(r["label"])) for r in csv.DictReader(f, delimiter="\t")]


def vocab_size() -> int:
    return len(VOCAB.read_text(encoding="utf-8").splitlines())


# ------------------------------------------------------------------ torch: transformers
class TorchSst2(torch.utils.data.Dataset):
    def __init__(self, split, tokenizer):
        self.examples = [dict(tokenizer(text, max_length=TORCH["max_len"], truncation=True,
                                        padding="max_length" if TORCH["pad_to_max"] else False),
                              labels=label + TORCH["label_offset"]) for text, label in rows(split)]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def data_torch(split):
    from transformers import BertTokenizer, DataCollatorWithPadding

    tokenizer = BertTokenizer(str(VOCAB), do_lower_case=TORCH["lower_case"])
    return torch.utils.data.DataLoader(TorchSst2(split, tokenizer), batch_size=BATCH[split], shuffle=False,
                                       drop_last=split == "eval" and TORCH["drop_last_eval"],
                                       collate_fn=DataCollatorWithPadding(tokenizer, padding="longest"))


def build_torch():
    from transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**CONFIG, vocab_size=vocab_size(), hidden_act="gelu"))


def forward_torch(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"]).logits


# ------------------------------------------------------------------ paddle: PaddleNLP
class PaddleSst2(paddle.io.Dataset):
    def __init__(self, split, tokenizer):
        self.examples = [dict(tokenizer(text, max_length=PADDLE["max_len"], truncation=True,
                                        padding="max_length" if PADDLE["pad_to_max"] else False,
                                        return_attention_mask=True),
                              labels=label + PADDLE["label_offset"]) for text, label in rows(split)]

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


def data_paddle(split):
    from paddlenlp.data import Dict, Pad, Stack
    from paddlenlp.transformers import BertTokenizer

    tokenizer = BertTokenizer(str(VOCAB), do_lower_case=PADDLE["lower_case"])
    dataset = PaddleSst2(split, tokenizer)
    # a tuple in this order: [data] fields names its positions
    batchify = Dict({"input_ids": Pad(axis=0, pad_val=tokenizer.pad_token_id),
                     "token_type_ids": Pad(axis=0, pad_val=tokenizer.pad_token_type_id),
                     "attention_mask": Pad(axis=0, pad_val=0), "labels": Stack(dtype="int64")})
    sampler = paddle.io.BatchSampler(dataset, batch_size=BATCH[split], shuffle=False,
                                     drop_last=split == "eval" and PADDLE["drop_last_eval"])
    return paddle.io.DataLoader(dataset, batch_sampler=sampler, collate_fn=batchify)


def build_paddle():
    from paddlenlp.transformers import BertConfig, BertForSequenceClassification

    return BertForSequenceClassification(BertConfig(**CONFIG, vocab_size=vocab_size(), hidden_act="gelu"))


def forward_paddle(model, batch):
    return model(input_ids=batch["input_ids"], token_type_ids=batch["token_type_ids"],
                 attention_mask=batch["attention_mask"])
