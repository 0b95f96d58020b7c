import nbformat as nbf

nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
nb.cells = [
    md("# adapter4rec quickstart\n\nLoad interactions and items from pandas frames, build a text "
       "item encoder and SASRec, add Houlsby adapters, train briefly, evaluate, recommend for one "
       "user, and compare two methods in a table and a plot. On a laptop CPU this takes a few "
       "minutes with the synthetic data; set `REAL = True` for Amazon Scientific."),
    code("# parameters (the test suite runs this notebook with a tiny model on synthetic data)\n"
         "REAL = False            # True: $ADAPTER4REC_DATASETS/amazon-scientific and all-MiniLM-L6-v2\n"
         "MODEL = None            # a local Hugging Face folder; None: all-MiniLM-L6-v2 if installed, else a tiny BERT\n"
         "EPOCHS = 3\n"
         "USERS = 300             # synthetic users\n"
         "OUT = 'runs/notebook'",
         metadata={"tags": ["parameters"]}),
    code("import os\nfrom pathlib import Path\n\nimport pandas as pd\n\nimport adapter4rec as a4r\n"
         "from adapter4rec.data.synthetic import make_domain, write_tiny_bert\n"
         "from adapter4rec.experiments.demo import minilm_folder\n\n"
         "out = Path(OUT)\n"
         "if REAL:\n"
         "    folder = Path(os.environ.get('ADAPTER4REC_DATASETS', 'Dataset')) / 'amazon-scientific'\n"
         "else:\n"
         "    folder = out / 'data'\n"
         "    make_domain(folder, 'target', n_users=USERS, n_items=120, seed=0)\n"
         "model_dir = MODEL or minilm_folder() or write_tiny_bert(out / 'tiny-bert', hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)\n"
         "model_dir"),
    md("## Data from frames\n\nAn interactions frame in long format (one row per interaction, as "
       "RecBole's `.inter` files) and an items frame. Here we make them from the files; your own "
       "frames work the same way."),
    code("users = [line.split('\\t') for line in (folder / 'users.tsv').read_text().splitlines() if line]\n"
         "interactions = pd.DataFrame([(u, i, t) for u, seq in users for t, i in enumerate(seq.split())],\n"
         "                            columns=['user', 'item', 'time'])\n"
         "items = pd.read_csv(folder / 'items.tsv', sep='\\t', header=None, usecols=[0, 1],\n"
         "                    names=['item', 'title'], quoting=3, dtype=str)\n"
         "data = a4r.RecData.from_frames(interactions, items, user_col='user', item_col='item',\n"
         "                               time_col='time', text_cols=['title'], max_seq_len=10)\n"
         "data.n_users, data.n_items"),
    md("## A model with adapters"),
    code("cfg = a4r.load_config(overrides=[f'model.pretrained={model_dir}', f'train.epochs={EPOCHS}',\n"
         "                                 'data.max_title_len=16', 'train.progress=false'])\n"
         "model = a4r.build_model(cfg, data)\n"
         "summary = a4r.peft.apply(model, 'houlsby')\n"
         "summary['trainable'], summary['total']"),
    code("houlsby = a4r.train(cfg, out / 'houlsby', data=data, model=model)\n"
         "houlsby['test']"),
    md("## Evaluate and recommend"),
    code("a4r.evaluate(houlsby.model, data, k=(10, 20))"),
    code("history = [data.item_ids[j - 1] for j in data.seqs[0][:-1]]\n"
         "top = a4r.recommend(houlsby.model, [history], k=5)[0]\n"
         "pd.DataFrame(top, columns=['item', 'score']).assign(\n"
         "    title=lambda f: f['item'].map(dict(zip(data.item_ids, data.texts))))"),
    md("## Compare with full fine-tuning"),
    code("full = a4r.train(cfg, out / 'full', data=data)  # peft.method: full (the default)\n"
         "table = pd.DataFrame([\n"
         "    {'method': name, 'trainable': r['trainable_params'], **{f'test {k}': v for k, v in r['test'].items()}}\n"
         "    for name, r in (('houlsby', houlsby), ('full', full))]).set_index('method')\n"
         "table"),
    code("import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n\n"
         "fig, ax = plt.subplots(figsize=(4, 3))\n"
         "ax.scatter(table['trainable'], table['test NDCG@10'])\n"
         "for name, row in table.iterrows():\n"
         "    ax.annotate(name, (row['trainable'], row['test NDCG@10']))\n"
         "ax.set_xscale('log'); ax.set_xlabel('trainable parameters'); ax.set_ylabel('test NDCG@10')\n"
         "ax.set_title('accuracy against trainable parameters')\n"
         "fig.tight_layout()\n"
         "fig.savefig(out / 'methods.png', dpi=100)"),
]
nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "docs/notebooks/quickstart.ipynb")
