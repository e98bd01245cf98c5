#!/usr/bin/env python3
"""CPU emulation of grouped_gemm_bf16.cu's index arithmetic, for checking kernel edits where no GPU is at hand.

A line-by-line Python translation of the kernel and of CudaBackend's host side: the grouped_cast_bf16 scratch layout
(groups packed, rows padded with zeros to a multiple of 8, the scratch starting as NaN so that an element the cast
misses shows), 64 groups per launch, largest k first, the kernel's 16-byte cp.async chunk map with zero fill
(alignment asserted), GB_BK slices (32 or 64), the per-lane ldmatrix row addresses with and without .trans, the
mma.m16n8k16 fragment layouts of A, B and the accumulators, the tile -> group binary search, the epilogue's pair
stores and guards; run on small ragged problems for all four transpositions and compared with numpy on bf16-rounded
inputs. The bf16 stage tiles start as NaN so that a fragment reading an element no thread stored fails; ldmatrix
row addresses are checked for 16-byte alignment and bank conflicts. It checks the arithmetic, not the hardware (nor
the stage ring's timing: one fresh NaN stage per K step): keep it in step with the .cu when either changes. Needs
numpy:  [GB_BN=256] [GB_BK=32] [GB_WARPS_N=2] python3 grouped_gemm_emulate.py
"""
import numpy as np, os
BM=128; BN=int(os.environ.get("GB_BN", 128)); BK=int(os.environ.get("GB_BK",64))
WARPS_N=int(os.environ.get("GB_WARPS_N",4)); WARPS=2*WARPS_N
PAD=8; T=32*WARPS; MAXG=64; WN=BN//WARPS_N; NJ=WN//8
A_TILE=max(BM*(BK+PAD),BK*(BM+PAD)); B_TILE=max(BN*(BK+PAD),BK*(BN+PAD))

def bf16(x):
    u=np.asarray(x,dtype=np.float32).view(np.uint32).astype(np.uint64)
    u=((u+0x7FFF+((u>>16)&1))>>16)<<16
    return u.astype(np.uint32).view(np.float32)

def gb_copy(S, sbase, G, base, ld, rows, cols, ROWS, COLS, LD):
    """grouped_gemm_bf16.cu's gb_copy: 16-byte (8 bf16) chunks straight into the stage tile, zero fill past rows/cols"""
    CPR=COLS//8; N=ROWS*COLS//8//T
    assert N*8*T==ROWS*COLS and LD%8==0
    for tid in range(T):
        for i in range(N):
            v=tid+i*T; row=v//CPR; col=(v%CPR)*8
            o=sbase+row*LD+col
            if row<rows and col<cols:
                q=base+row*ld+col
                assert q%8==0, "misaligned 16-byte cp.async"
                S[o:o+8]=G[q:q+8]
            else:
                S[o:o+8]=0

def cast_operand(G, offs, ld, rows, cols, ks):
    """grouped_cast_bf16 + CudaBackend.castGroupedOperand: returns (scratch, per-group offsets, dstLd)"""
    dstLd=(max([c for c,kk in zip(cols,ks) if kk>0],default=0)+7)//8*8
    at=[]; total=0
    for r,kk in zip(rows,ks):
        at.append(total if kk>0 else 0); total+=r*dstLd if kk>0 else 0
    S=np.full(max(total,8),np.nan,np.float32)
    for o,src,r,c,kk in zip(at,offs,rows,cols,ks):
        if kk==0: continue
        for row in range(r):
            for ch in range(dstLd//8):
                col=ch*8
                v=[G[src+row*ld+col+e] if col+e<c else 0 for e in range(8)]
                S[o+row*dstLd+col:o+row*dstLd+col+8]=bf16(np.array(v,np.float32))
    assert not np.isnan(S[:total]).any(), "cast left scratch unwritten"
    return S,at,dstLd

def ldmatrix_x4(S, addr, trans):
    """addr[lane]: element index of the lane's row; returns regs[lane][j] = 2 values (lower address first)"""
    out=np.empty((32,4,2),np.float32)
    for j in range(4):
        rows=addr[8*j:8*j+8]
        assert all(a%8==0 for a in rows), "ldmatrix row not 16-byte aligned"
        assert len({(a*2//16)%8 for a in rows})==8, "ldmatrix bank conflict"
        Mx=np.stack([S[a:a+8] for a in rows])
        for t in range(32):
            g,q=t//4,t%4
            if trans: out[t,j]=[Mx[2*q,g],Mx[2*q+1,g]]
            else: out[t,j]=Mx[g,2*q:2*q+2]
    return out

def mma(acc, a, b0, b1):
    """acc[lane][4] += A (a[lane][4][2]) * B (b0, b1: [lane][2]) with the m16n8k16 row.col layouts"""
    A=np.full((16,16),np.nan); Bm=np.full((16,8),np.nan)
    for t in range(32):
        g,q=t//4,t%4
        A[g,2*q:2*q+2]=a[t,0]; A[g+8,2*q:2*q+2]=a[t,1]; A[g,2*q+8:2*q+10]=a[t,2]; A[g+8,2*q+8:2*q+10]=a[t,3]
        Bm[2*q:2*q+2,g]=b0[t]; Bm[2*q+8:2*q+10,g]=b1[t]
    assert not np.isnan(A).any() and not np.isnan(Bm).any(), "read unwritten smem"
    D=A@Bm
    for t in range(32):
        g,q=t//4,t%4
        acc[t,0]+=D[g,2*q]; acc[t,1]+=D[g,2*q+1]; acc[t,2]+=D[g+8,2*q]; acc[t,3]+=D[g+8,2*q+1]

def warp_mma(S, acc, TA, TB, aLane, bLane):
    LDA_S = BM+PAD if TA else BK+PAD
    LDB_S = BK+PAD if TB else BN+PAD
    for ks in range(0,BK,16):
        a=[ldmatrix_x4(S,[x+(ks*LDA_S+i*16 if TA else i*16*LDA_S+ks) for x in aLane],TA) for i in range(4)]
        b=[ldmatrix_x4(S,[x+(j*16*LDB_S+ks if TB else ks*LDB_S+j*16) for x in bLane],not TB) for j in range(NJ//2)]
        for i in range(4):
            for j in range(NJ):
                mma(acc[:,i,j],a[i],b[j>>1][:,(j&1)*2],b[j>>1][:,(j&1)*2+1])

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
        lda,ldb=P['lda'],P['ldb']
        LDA_S = BM+PAD if TA else BK+PAD
        LDB_S = BK+PAD if TB else BN+PAD
        acc=np.zeros((WARPS,32,4,NJ,4),np.float64)  # warp, lane, i, j, e
        numK=(K+BK-1)//BK
        if numK>0:
            aPtr = A+m0 if TA else A+m0*lda
            bPtr = B+n0*ldb if TB else B+n0
            aStep = BK*lda if TA else BK
            bStep = BK if TB else BK*ldb
            for kt in range(numK):
                kl=K-kt*BK; a=aPtr+kt*aStep; b=bPtr+kt*bStep
                S=np.full(A_TILE+B_TILE,np.nan,np.float32)  # a fresh NaN stage per step
                if TA: gb_copy(S,0,Ag,a,lda,kl,M-m0,BK,BM,LDA_S)
                else: gb_copy(S,0,Ag,a,lda,M-m0,kl,BM,BK,LDA_S)
                if TB: gb_copy(S,A_TILE,Bg,b,ldb,N-n0,kl,BN,BK,LDB_S)
                else: gb_copy(S,A_TILE,Bg,b,ldb,kl,N-n0,BK,BN,LDB_S)
                for warp in range(WARPS):
                    wm=warp//WARPS_N; wn=warp%WARPS_N
                    aLane=[]; bLane=[]
                    for lane in range(32):
                        r8=lane&7; j0=(lane>>3)&1; j1=lane>>4; aRow=wm*64; bCol=wn*WN
                        aLane.append((j1*8+r8)*LDA_S+aRow+j0*8 if TA else (aRow+j0*8+r8)*LDA_S+j1*8)
                        bLane.append(A_TILE+((bCol+j1*8+r8)*LDB_S+j0*8 if TB else (j0*8+r8)*LDB_S+bCol+j1*8))
                    warp_mma(S,acc[warp],TA,TB,aLane,bLane)
        alpha,beta=np.float32(P['alpha']),np.float32(P['beta']); ldc=P['ldc']
        vecC=C%2==0 and ldc%2==0
        for warp in range(WARPS):
            wm=warp//WARPS_N; wn=warp%WARPS_N
            for lane in range(32):
                colBase=n0+wn*WN+2*(lane&3)
                for i in range(4):
                    for h in range(2):
                        row=m0+wm*64+i*16+h*8+(lane>>2)
                        if row>=M: continue
                        crow=C+row*ldc
                        for j in range(NJ):
                            col=colBase+j*8
                            v=[alpha*np.float32(acc[warp,lane,i,j,2*h]),alpha*np.float32(acc[warp,lane,i,j,2*h+1])]
                            if vecC and col+1<N: assert (crow+col)%2==0, "misaligned float2"
                            for e in range(2):
                                if col+e<N:
                                    q=crow+col+e
                                    Cg[q]=np.float32(beta*Cg[q]+v[e]) if beta!=0 else v[e]

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
    act.sort(key=lambda g: -k[g])  # host: largest k first (Python's sort is stable, as the insertion sort)
    for st in range(0,len(act),MAXG):
        here=act[st:st+MAXG]
        P=dict(groups=len(here),lda=lda,ldb=ldb,ldc=ldc,alpha=alpha,beta=beta,a=[],b=[],c=[],m=[],n=[],k=[],tileStart=[],flags=[])
        tiles=0
        for g in here:
            aA=aOff[g] if k[g]>0 else 0; bA=bOff[g] if k[g]>0 else 0
            P['a'].append(aA); P['b'].append(bA); P['c'].append(cOff[g])
            P['m'].append(m[g]); P['n'].append(n[g]); P['k'].append(k[g]); P['tileStart'].append(tiles)
            P['flags'].append((1 if aA%4==0 and lda%4==0 else 0)|(2 if bA%4==0 and ldb%4==0 else 0))
            tiles+=((m[g]+BM-1)//BM)*((n[g]+BN-1)//BN)
        aR=[k[g] if TA else m[g] for g in here]; aC=[m[g] if TA else k[g] for g in here]
        bR=[n[g] if TB else k[g] for g in here]; bC=[k[g] if TB else n[g] for g in here]
        ks=[k[g] for g in here]
        SA,aAt,lda16=cast_operand(Ag,P['a'],lda,aR,aC,ks); SB,bAt,ldb16=cast_operand(Bg,P['b'],ldb,bR,bC,ks)
        P['a']=aAt; P['b']=bAt; P['lda']=lda16; P['ldb']=ldb16
        kernel(TA,TB,P,SA,SB,Cg)
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
    m=[37,0,1,130,17,128]; n=[40,72,257,9,3,256]; k=[72,50,0,33,40,64]
    s=0
    for TA in (False,True):
        for TB in (False,True):
            for aligned in (True,False):
                s+=1
                e=packed(TA,TB,m,n,k,aligned,1.3,0.5,False,s); print(TA,TB,aligned,"rel err %.2e"%e,flush=True); assert e<1e-5
                e=packed(TA,TB,m,n,k,aligned,0.75,0.0,True,s+100); print(TA,TB,aligned,"beta0 NaN rel err %.2e"%e,flush=True); assert e<1e-5
    print("ALL OK")


if __name__ == "__main__":
    main()
