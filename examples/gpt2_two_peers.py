"""A Hugging Face GPT-2-style model (built from a config, no download) trained by
two peers over TCP, each with its own loop and its own torch optimizer.

    gossamer coordinator --listen 127.0.0.1:7000 --min-peers 2 &
    python examples/gpt2_two_peers.py 127.0.0.1:7000 0 & python examples/gpt2_two_peers.py 127.0.0.1:7000 1
"""
import pathlib, sys, sysconfig
import torch, gossamer
from transformers import GPT2Config, GPT2LMHeadModel

coordinator, rank = sys.argv[1], int(sys.argv[2])
steps, context, batch = 60, 64, 8
torch.manual_seed(0)  # every peer starts from the same weights
config = GPT2Config(vocab_size=256, n_positions=context, n_embd=64, n_layer=2, n_head=2, bos_token_id=0,
                    eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
model = GPT2LMHeadModel(config)
model.loss_type = "ForCausalLM"  # the plain causal-LM loss, without transformers' "unrecognized loss_type" warning
files = sorted(pathlib.Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[rank::2]  # this peer's shard
text = torch.tensor(list(b"".join(f.read_bytes() for f in files[:40])), dtype=torch.long)

opt = gossamer.Optimizer(model, torch.optim.AdamW(model.parameters(), lr=3e-3), coordinator=coordinator,
                         algorithm="diloco", inner_steps=10, total_steps=steps, key=f"gpt2-peer{rank}.pem")
g = torch.Generator().manual_seed(rank)
for step in range(steps):
    starts = torch.randint(0, len(text) - context, (batch,), generator=g)
    ids = torch.stack([text[s:s + context] for s in starts])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step(loss=loss)  # AdamW's step; every 10 steps the DiLoCo outer step over the swarm
    opt.zero_grad()
    if step % 10 == 9:
        print(f"peer {rank} step {step + 1} loss {loss.item():.3f}", flush=True)
opt.close()
print(f"peer {rank} done: {opt.report.rounds_completed} rounds, {opt.report.bytes_sent} bytes sent, "
      f"state {opt.report.final_state_hash[:16]}")
