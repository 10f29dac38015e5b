"""The paper's published numbers (He et al., EMNLP 2022 Findings), shown beside ours for orientation only:
other backbones (BERT-base, RoBERTa-base, BART-large) and the full training budget."""

PAPER_TABLE2 = {  # the paper's Table 2: RoBERTa GLUE Avg. / BART-large XSum R2 / BERT SQuAD F1
    "finetune": "79.0 / 21.9 / 87.8", "dense": "78.3 / 21.6 / 87.4", "snip_s20": "78.7 / 21.6 / 87.5",
    "snip": "78.6 / 21.8 / 87.7", "snip_s60": "78.2 / 21.5 / 87.4", "snip_s80": "77.9 / 21.3 / 87.0",
}
PAPER_BERT_AVG = {  # the paper's BERT-base GLUE averages (CoLA/MRPC/STS-B/RTE), Tables 1 and 3
    "finetune": 74.5, "dense": 73.6, "random": 73.7, "magnitude": 73.2, "er": 73.7, "snip": 74.2, "grasp": 74.0,
    "large_sparse2": 74.3, "large_sparse3": 74.6, "large_sparse4": 75.1,
}
PAPER_ROBERTA_AVG_TABLE2 = {  # Table 2 reports sparsities on RoBERTa-base only
    "finetune": 79.0, "dense": 78.3, "snip_s20": 78.7, "snip": 78.6, "snip_s60": 78.2, "snip_s80": 77.9,
}
PAPER_ROBERTA_AVG_TABLE4 = {  # Table 4: other adapters, dense -> SparseAdapter (RoBERTa-base)
    "t4_pfeiffer": 77.7, "t4_pfeiffer_snip": 77.9, "t4_lora": 78.1, "t4_lora_snip": 78.2,
    "t4_mam": 78.0, "t4_mam_snip": 78.3, "t4_fusion": 79.9, "t4_fusion_snip": 80.1,
}
