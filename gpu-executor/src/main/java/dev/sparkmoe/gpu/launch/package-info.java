/**
 * The rank runtime and the standalone launcher ({@code spark-moe launch --nproc N -- args}, the torchrun
 * equivalent): {@link dev.sparkmoe.gpu.launch.Launcher} starts one {@link dev.sparkmoe.gpu.launch.RankMain} JVM per GPU
 * on this host; each joins the TCP world, makes the NCCL world when the backend is cuda, and runs a
 * {@link dev.sparkmoe.gpu.launch.RankEntry} (the trainer, or {@link dev.sparkmoe.gpu.launch.CollectiveSmokeEntry}).
 *
 * <p>Plugging a trainer in: implement {@code RankEntry} (public no-argument constructor) and run
 * {@code spark-moe launch --nproc 8 --entry my.Trainer -- --config run.yaml}; {@code ctx.world()} is the NCCL world
 * on GPUs and the TCP world on CPUs, {@code ctx.nccl()} gives the NCCL communicator itself (stream, async forms,
 * split per mesh dimension), {@code ctx.device()} the CUDA device. The children's environment carries
 * {@code NCCL_NVLS_ENABLE=0}.
 */
package dev.sparkmoe.gpu.launch;
