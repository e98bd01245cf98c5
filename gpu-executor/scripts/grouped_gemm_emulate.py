#!/usr/bin/env python3
"""CPU emulation of grouped_gemm.cu's index arithmetic, for checking kernel edits where no GPU is at hand.

A line-by-line Python translation of the kernel (thread -> element maps of the global loads and shared stores,
shared-memory layouts and padding, wmma fragment addressing and alignment rules, the tile -> group binary search,
epilogue guards) and of CudaBackend.groupedKernel's host side (64 groups per launch, float4 flags), run on small
ragged problems for all four transpositions and compared with numpy on bf16-rounded inputs. Shared memory starts as
NaN so that a fragment reading an element no thread stored fails. It checks the arithmetic, not the hardware: keep
it in step with the .cu when either changes. Needs numpy; about 10 s:  python3 grouped_gemm_emulate.py
"""
import numpy as np, sys
BM=BN=128; BK=32; PAD=8; T=256; SLD=36; MAXG=64
A_STAGE=BM*(BK+PAD); B_STAGE=BN*(BK+PAD)

def bf16(x):
    u=np.asarray(x,dtype=np.float32).view(np.uint32).astype(np.uint64)
    u=((u+0x7FFF+((u>>16)&1))>>16)<<16
    return u.astype(np.uint32).view(np.float32)

def gg_load(G, base, ld, rows, cols, vec, ROWS, COLS):
    VPR=COLS//4; N=ROWS*COLS//4//T
    r=np.zeros((T,N,4),np.float32)
    for tid in range(T):
        for i in range(N):
            v=tid+i*T; row=v//VPR; col=(v%VPR)*4
            if row<rows:
                q=base+row*ld+col
                if vec and col+3<cols:
                    assert q%4==0, "misaligned float4"
                    r[tid,i,:]=G[q:q+4]
                else:
                    for e in range(4):
                        if col+e<cols: r[tid,i,e]=G[q+e]
    return r

def gg_store(S, sbase, r, ROWS, COLS, LD):
    VPR=COLS//4; N=ROWS*COLS//4//T
    for tid in range(T):
        for i in range(N):
            v=tid+i*T; row=v//VPR; col=(v%VPR)*4
            o=sbase+row*LD+col
            assert o%4==0
            S[o:o+4]=bf16(r[tid,i,:])

def frag_a(S,p,ldm,colmajor):
    assert (p*2)%32==0 and ldm%8==0
    F=np.empty((16,16),np.float32)
    for i in range(16):
        for k in range(16):
            F[i,k]=S[p+k*ldm+i] if colmajor else S[p+i*ldm+k]
    return F
def frag_b(S,p,ldm,colmajor):
    assert (p*2)%32==0 and ldm%8==0
    F=np.empty((16,16),np.float32)
    for k in range(16):
        for j in range(16):
            F[k,j]=S[p+j*ldm+k] if colmajor else S[p+k*ldm+j]
    return F

def kernel(TA,TB,P,Ag,Bg,Cg):
    tiles=0; starts=[]
    for g in range(P['groups']):
        starts.append(tiles); tiles+=((P['m'][g]+BM-1)//BM)*((P['n'][g]+BN-1)//BN)
    assert starts==P['tileStart'][:P['groups']]
    for t in range(tiles):
        lo,hi=0,P['groups']-1
        while lo<hi:
            mid=(lo+hi+1)>>1
            if P['tileStart'][mid]<=t: lo=mid
            else: hi=mid-1
        g=lo; M,N,K=P['m'][g],P['n'][g],P['k'][g]
        tilesN=(N+BN-1)//BN; local=t-P['tileStart'][g]; m0=(local//tilesN)*BM; n0=(local%tilesN)*BN
        A,B,C=P['a'][g],P['b'][g],P['c'][g]
        vecA=P['flags'][g]&1; vecB=P['flags'][g]&2; lda,ldb=P['lda'],P['ldb']
        S=np.full(2*A_STAGE+2*B_STAGE,np.nan,np.float32); As=0; Bs=2*A_STAGE
        LDA_S = BM+PAD if TA else BK+PAD
        LDB_S = BK+PAD if TB else BN+PAD
        acc=np.zeros((8,4,2,16,16),np.float32)
        numK=(K+BK-1)//BK
        if numK>0:
            aPtr = A+m0 if TA else A+m0*lda
            bPtr = B+n0*ldb if TB else B+n0
            aStep = BK*lda if TA else BK
            bStep = BK if TB else BK*ldb
            def load(kt):
                kl=K-kt*BK; a=aPtr+kt*aStep; b=bPtr+kt*bStep
                ra = gg_load(Ag,a,lda,kl,M-m0,vecA,BK,BM) if TA else gg_load(Ag,a,lda,M-m0,kl,vecA,BM,BK)
                rb = gg_load(Bg,b,ldb,N-n0,kl,vecB,BN,BK) if TB else gg_load(Bg,b,ldb,kl,N-n0,vecB,BK,BN)
                return ra,rb
            def store(s,ra,rb):
                if TA: gg_store(S,As+s*A_STAGE,ra,BK,BM,LDA_S)
                else: gg_store(S,As+s*A_STAGE,ra,BM,BK,LDA_S)
                if TB: gg_store(S,Bs+s*B_STAGE,rb,BN,BK,LDB_S)
                else: gg_store(S,Bs+s*B_STAGE,rb,BK,BN,LDB_S)
            ra,rb=load(0); store(0,ra,rb)
            for kt in range(numK):
                s=kt&1; more=kt+1<numK
                if more: ra,rb=load(kt+1)
                a_s=As+s*A_STAGE; b_s=Bs+s*B_STAGE
                for warp in range(8):
                    wm=warp>>2; wn=warp&3
                    for ks in (0,16):
                        fb=[]
                        for j in range(2):
                            c=wn*32+j*16
                            fb.append(frag_b(S,b_s+c*LDB_S+ks,LDB_S,True) if TB else frag_b(S,b_s+ks*LDB_S+c,LDB_S,False))
                        for i in range(4):
                            r=wm*64+i*16
                            fa=frag_a(S,a_s+ks*LDA_S+r,LDA_S,True) if TA else frag_a(S,a_s+r*LDA_S+ks,LDA_S,False)
                            assert not np.isnan(fa).any() and not any(np.isnan(x).any() for x in fb), "read unwritten smem"
                            for j in range(2):
                                acc[warp,i,j]+=fa.astype(np.float64)@fb[j].astype(np.float64)
                if more: store(s^1,ra,rb)
        alpha,beta=P['alpha'],P['beta']
        for warp in range(8):
            wm=warp>>2; wn=warp&3
            for lane in range(32):
                col=n0+wn*32+lane
                for i in range(4):
                    stage=np.concatenate([acc[warp,i,0],acc[warp,i,1]],axis=1)  # 16 x 32
                    if col<N:
                        for r in range(16):
                            row=m0+wm*64+i*16+r
                            if row>=M: break
                            q=C+row*P['ldc']+col
                            v=np.float32(alpha)*stage[r,lane]
                            if beta!=0: v=np.float32(beta)*Cg[q]+v
                            Cg[q]=v

def run(TA,TB,m,n,k,lda,ldb,ldc,aOff,bOff,cOff,aLen,bLen,cLen,alpha,beta,nanC,seed):
    rng=np.random.default_rng(seed)
    Ag=rng.standard_normal(aLen).astype(np.float32); Bg=rng.standard_normal(bLen).astype(np.float32)
    Cg=np.full(cLen,np.nan,np.float32) if nanC else rng.standard_normal(cLen).astype(np.float32)
    ref=Cg.astype(np.float64).copy()
    Ar=bf16(Ag).astype(np.float64); Br=bf16(Bg).astype(np.float64)
    act=[g for g in range(len(m)) if m[g]>0 and n[g]>0]
    for g in act:
        if k[g]==0:
            opA=np.zeros((m[g],0)); opB=np.zeros((0,n[g]))
        else:
            opA = np.lib.stride_tricks.as_strided(Ar[aOff[g]:], (k[g],m[g]), (lda*8,8)).T if TA else np.lib.stride_tricks.as_strided(Ar[aOff[g]:], (m[g],k[g]), (lda*8,8))
            opB = np.lib.stride_tricks.as_strided(Br[bOff[g]:], (n[g],k[g]), (ldb*8,8)).T if TB else np.lib.stride_tricks.as_strided(Br[bOff[g]:], (k[g],n[g]), (ldb*8,8))
        Cv=np.lib.stride_tricks.as_strided(ref[cOff[g]:], (m[g],n[g]), (ldc*8,8))
        Cv[...] = alpha*(opA@opB) + (beta*Cv if beta!=0 else 0)
    # host side (CudaBackend.groupedKernel): chunks of 64
    for st in range(0,len(act),MAXG):
        here=act[st:st+MAXG]
        P=dict(groups=len(here),lda=lda,ldb=ldb,ldc=ldc,alpha=alpha,beta=beta,a=[],b=[],c=[],m=[],n=[],k=[],tileStart=[],flags=[])
        tiles=0
        for g in here:
            aA=aOff[g] if k[g]>0 else 0; bA=bOff[g] if k[g]>0 else 0
            P['a'].append(aA); P['b'].append(bA); P['c'].append(cOff[g])
            P['m'].append(m[g]); P['n'].append(n[g]); P['k'].append(k[g]); P['tileStart'].append(tiles)
            P['flags'].append((1 if aA%4==0 and lda%4==0 else 0)|(2 if bA%4==0 and ldb%4==0 else 0))
            tiles+=((m[g]+127)//128)*((n[g]+127)//128)
        kernel(TA,TB,P,Ag,Bg,Cg)
    nanref=np.isnan(ref); assert (np.isnan(Cg)==nanref).all(), "NaN pattern differs"
    err=np.abs(Cg[~nanref]-ref[~nanref]).max() if (~nanref).any() else 0
    scale=np.abs(ref[~nanref]).max() if (~nanref).any() else 1
    return err/scale


def main():
    def stride(cols,aligned):
        w=max(1,max(cols)); return (w+3)//4*4+4 if aligned else (w+3 if w%2==0 else w+2)
    def place(rows,cols,ld,aligned):
        at=4 if aligned else 1; off=[]
        for r,c in zip(rows,cols):
            if aligned: at=(at+3)//4*4
            elif at%2==0: at+=1
            off.append(at); span=0 if r==0 or c==0 else (r-1)*ld+c; at+=span+(8 if aligned else 5)
        return off,at+8
    def packed(TA,TB,m,n,k,aligned,alpha,beta,nanC,seed):
        aR=[k[g] if TA else m[g] for g in range(len(m))]; aC=[m[g] if TA else k[g] for g in range(len(m))]
        bR=[n[g] if TB else k[g] for g in range(len(m))]; bC=[k[g] if TB else n[g] for g in range(len(m))]
        lda,ldb,ldc=stride(aC,aligned),stride(bC,aligned),stride(n,aligned)
        aOff,aLen=place(aR,aC,lda,aligned); bOff,bLen=place(bR,bC,ldb,aligned); cOff,cLen=place(m,n,ldc,aligned)
        return run(TA,TB,m,n,k,lda,ldb,ldc,aOff,bOff,cOff,aLen,bLen,cLen,alpha,beta,nanC,seed)
    m=[37,0,1,3,17,130,5]; n=[40,72,40,129,16,72,200]; k=[72,50,0,33,40,70,1]
    s=0
    for TA in (False,True):
        for TB in (False,True):
            for aligned in (True,False):
                s+=1
                e=packed(TA,TB,m,n,k,aligned,1.3,0.5,False,s); print(TA,TB,aligned,"rel err %.2e"%e); assert e<1e-5
                e=packed(TA,TB,m,n,k,aligned,0.75,0.0,True,s+100); print(TA,TB,aligned,"beta0 NaN rel err %.2e"%e); assert e<1e-5
    print("ALL OK")


if __name__ == "__main__":
    main()
