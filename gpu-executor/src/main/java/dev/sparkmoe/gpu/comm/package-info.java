/**
 * Communicators of the executor: {@link dev.sparkmoe.gpu.comm.TcpCommunicator} for CPU ranks in separate processes.
 *
 * <p>Launching N ranks (the standalone launcher, or anything else that starts processes):
 * <ol>
 *   <li>The launcher creates one {@link dev.sparkmoe.gpu.comm.JobSecret#generate()} per job and picks rank 0's
 *       {@code host:port}.</li>
 *   <li>It starts each rank with the environment of {@link dev.sparkmoe.gpu.comm.TcpRendezvous#fromEnvironment()}:
 *       {@code SPARK_MOE_WORLD_SIZE}, {@code SPARK_MOE_RANK}, {@code SPARK_MOE_MASTER_ADDR=host:port}, optionally
 *       {@code SPARK_MOE_LISTEN_HOST} and the timeouts in milliseconds, and the secret as
 *       {@code SPARK_MOE_JOB_SECRET} (text of {@code encode()}) or {@code SPARK_MOE_JOB_SECRET_FILE} (a file from
 *       {@code writeTo}/{@code writeTempFile}, mode 0600). Never on the command line.</li>
 *   <li>Each rank calls {@code TcpCommunicator.connect(TcpRendezvous.fromEnvironment())}, uses the communicator
 *       (and its {@code split} sub-groups), and closes it at the end.</li>
 * </ol>
 */
package dev.sparkmoe.gpu.comm;
