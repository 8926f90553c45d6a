#include "mm1bundle.h"
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
static int check(const char *msg, size_t len, const char *want){
  uint8_t d[32]; char h[65]; int bad=0;
  for(int fp=0; fp<2; fp++){ mm1b_sha256_force_portable(fp); mm1b_sha256(msg,len,d); mm1b_hex32(d,h); if(strcmp(h,want)){printf("FAIL fp=%d len=%zu %s != %s\n",fp,len,h,want);bad=1;} }
  mm1b_sha256_force_portable(0);
  return bad;
}
int main(int argc,char**argv){
  int bad=0;
  printf("accelerated=%d\n", mm1b_sha256_accelerated());
  bad|=check("",0,"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  bad|=check("abc",3,"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const char *m448="abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  bad|=check(m448,strlen(m448),"248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const char *m896="abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu";
  bad|=check(m896,strlen(m896),"cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  char *a=malloc(1000000); memset(a,'a',1000000);
  bad|=check(a,1000000,"cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // random lengths, portable vs accelerated, incremental vs one shot
  srand(1);
  unsigned char *buf=malloc(70000); for(int i=0;i<70000;i++) buf[i]=rand();
  for(int it=0; it<3000; it++){
    size_t len=rand()%70000; if(it<300) len=it;
    uint8_t d1[32],d2[32],d3[32];
    mm1b_sha256_force_portable(1); mm1b_sha256(buf,len,d1);
    mm1b_sha256_force_portable(0); mm1b_sha256(buf,len,d2);
    mm1b_sha256_ctx c; mm1b_sha256_init(&c); size_t o=0; while(o<len){size_t k=rand()%130; if(k>len-o)k=len-o; mm1b_sha256_update(&c,buf+o,k); o+=k;} mm1b_sha256_final(&c,d3);
    if(memcmp(d1,d2,32)||memcmp(d1,d3,32)){printf("FAIL random len %zu\n",len);bad=1;break;}
  }
  // files vs sha256sum
  for(int i=1;i<argc;i++){FILE*f=fopen(argv[i],"rb"); fseek(f,0,SEEK_END); long n=ftell(f); fseek(f,0,SEEK_SET); char*p=malloc(n+1); fread(p,1,n,f); fclose(f); uint8_t d[32]; char h[65]; mm1b_sha256(p,n,d); mm1b_hex32(d,h); printf("%s  %s\n",h,argv[i]); free(p);}
  printf(bad?"SHA FAIL\n":"SHA OK\n"); return bad;
}
