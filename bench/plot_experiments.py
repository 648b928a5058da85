"""Render the embedded experiments to docs/img/ (run from the repository root)."""
import sys, numpy as np, matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
from elit.experiments import graphene_movie, perovskite_image
e=graphene_movie(); c=graphene_movie(dose=None)
show=[0,4,8,11]
fig,ax=plt.subplots(3,4,figsize=(16,12.5))
for j,f in enumerate(show):
    ax[0,j].imshow(e.frames[f],cmap='gray'); ax[0,j].set_title(f'frame {f} (dose 10 e/px)')
    ax[1,j].imshow(e.frames[f],cmap='gray')
    t=e.truth.in_frame(f); a=e.amorphous.in_frame(f)
    for k,col in [(0,'c'),(1,'r')]:
        m=t.class_index==k; ax[1,j].plot(t.col[m],t.row[m],'.',ms=3 if k==0 else 8,color=col)
    ax[1,j].plot(a.col,a.row,'x',ms=4,color='y')
    ax[1,j].contour(e.hole_masks[f],[0.5],colors='m')
    ax[1,j].set_title('truth: C cyan, Si red, amorph. yellow, hole')
    ax[2,j].imshow(c.frames[f],cmap='gray'); ax[2,j].set_title('noise-free (dose=None)')
for a_ in ax.ravel(): a_.set_xticks([]); a_.set_yticks([])
plt.tight_layout(); plt.savefig('docs/img/experiment_graphene.png',dpi=70)
p=perovskite_image(); q=perovskite_image(dose=None)
fig,ax=plt.subplots(1,3,figsize=(18,6.4))
ax[0].imshow(p.frames[0],cmap='gray'); ax[0].set_title('perovskite + rock-salt island (dose 30 e/px)')
ax[1].imshow(p.frames[0],cmap='gray')
for k,col in [(0,'r'),(1,'c'),(2,'y')]:
    m=p.truth.class_index==k; ax[1].plot(p.truth.col[m],p.truth.row[m],'.',ms=5,color=col,label=p.truth.class_names[k])
ax[1].legend(loc='upper right'); ax[1].set_title('truth')
ax[2].imshow(q.frames[0],cmap='gray'); ax[2].set_title('noise-free')
for a_ in ax: a_.set_xticks([]); a_.set_yticks([])
plt.tight_layout(); plt.savefig('docs/img/experiment_perovskite.png',dpi=70)
# zoom
fig,ax=plt.subplots(1,3,figsize=(18,6))
ax[0].imshow(e.frames[0][:110,:110],cmap='gray'); ax[0].set_title('synthetic frame 0 zoom, 0.1 A/px')
import h5py
if len(sys.argv) < 2:
    sys.exit(0)  # optional: a real graphene .hdf5 (AICrystallographer layout) to compare with
im=h5py.File(sys.argv[1],'r')['image_data'][()]
ax[1].imshow(im[:147,:147],cmap='gray'); ax[1].set_title('real G-Si-2nm, same field (11 A), 0.075 A/px')
ax[2].imshow(c.frames[0][:110,:110],cmap='gray'); ax[2].set_title('noise-free zoom')
plt.tight_layout(); plt.savefig('docs/img/experiment_vs_real.png',dpi=70)
