import sys, time, torch
sys.path.insert(0, sys.argv[1])
from tensordict import TensorDict
from gorl.refinement import DecoderFit, RefinementConfig
from gorl.decoders import FlowDecoder
torch.set_num_threads(1)
n=20000; g=torch.Generator().manual_seed(0)
data=TensorDict({"observation":torch.randn(n,15,generator=g),"action":torch.randn(n,4,generator=g),"latent":torch.randn(n,4,generator=g)},[n])
res=[]
for rep in range(3):
    torch.manual_seed(0)
    dec=FlowDecoder(15,4,hidden=[64,64]); dec.fit_obs_statistics(data["observation"])
    opt=torch.optim.Adam(dec.parameters(),lr=1e-3,fused=True)
    def optimize(loss):
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    cfg=RefinementConfig(transitions=n, steps=400, val_every=200, batch_size=256, val_samples=256)
    fit=DecoderFit(cfg,data[:18000],data[18000:])
    fit.step(dec,optimize)
    t=time.perf_counter(); fit.step(dec,optimize); res.append(time.perf_counter()-t)
print(sys.argv[1], "200 refit steps (incl. one validation):", " ".join(f"{r:.3f}" for r in res), "s; median", sorted(res)[1])
